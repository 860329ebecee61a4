"""The operator dashboard: server-rendered pages (:mod:`.views`) and a screenshot tool."""
