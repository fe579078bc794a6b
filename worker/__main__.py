from worker.start import main

raise SystemExit(main())
