"""Dynamic groups: saved selectors over device tags and facts.

Keep this file free of imports: the pure selector language must load without Flask or SQL."""
