from fader_kit.cli.main import main

raise SystemExit(main())
