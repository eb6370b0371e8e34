from imagebuilder.cli.main import main

raise SystemExit(main())
