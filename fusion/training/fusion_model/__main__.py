from fusion.training.fusion_model.command import main

raise SystemExit(main())
