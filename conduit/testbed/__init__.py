"""The host side of flux-conduit: what runs on your machine, never in a Flux job.

Neither copied into the image nor installed by `make install`; it may use
libraries from PyPI (the `testbed` extra).  Its parts:

- `engine`: Docker, or Podman through its Docker-compatible API service;
- `composefile`: the compose file of an instance of SIZE brokers;
- `image`: the build context, the image tag (a hash of exactly what goes
  into the image), building and pulling;
- `compose`: the one runner of compose commands;
- `readiness` and `waiting`: when the instance is usable, and the one
  wait-until helper;
- `lifecycle`: `Testbed`, behind `make up`, `scale`, `restart`, `down`;
- `site`: the shared directory (/data) and the site's own broker config;
- `cli`: `python3 -m conduit.testbed`, the Makefile's command line;
- `cluster`, `native` and `plugin`: the pytest plugin (fixtures
  `flux_testbed` and `flux_instance`) and the objects it hands to tests;
- `minicluster` (a Kubernetes manifest) and `plot` (bench results).
"""
