from deid_node.cli import main

raise SystemExit(main())
