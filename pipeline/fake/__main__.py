"""``python -m pipeline.fake``: run the fake server."""

from pipeline.fake.cli import main

raise SystemExit(main())
