from fusion.training.heads.command import main

raise SystemExit(main())
