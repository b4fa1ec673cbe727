from asasnn.cli import main

raise SystemExit(main())
