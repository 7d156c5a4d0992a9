from tuneloop.cli import app

app(prog_name="tuneloop")
