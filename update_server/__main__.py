from update_server.cli import main

raise SystemExit(main())
