"""tuneloop's five services and the small library they share."""
