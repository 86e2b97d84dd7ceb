from locvit.cli import main

raise SystemExit(main())
