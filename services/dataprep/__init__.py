"""The data-prep service: uploaded files and the datasets prepared from them."""
