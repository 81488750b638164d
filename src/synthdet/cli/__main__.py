from . import app

app(prog_name="synthdet")
