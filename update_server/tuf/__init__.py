"""The TUF repository as the server sees it: static files and the current releases."""
