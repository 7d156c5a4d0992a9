"""The feedback service: thumbs up/down and corrections of served completions."""
