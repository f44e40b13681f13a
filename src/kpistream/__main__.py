from kpistream.cli import main

raise SystemExit(main())
