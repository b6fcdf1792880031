"""The wiring on top: everything below is built here from the settings, and commands run here.

- cli: The `assistant` command line: settings from the environment and flags, then one command.
- follow_up_training: `assistant train follow-ups`: fits the dialogue's follow-up detector and
  calibrates the dialogue policy's thresholds on validation data.
- operator_accounts: `assistant operators create|list|revoke`: managing operator keys from the
  command line.
- re_fusion: Re-fusing stored profiles when the fusion model changes (`assistant re-fuse`).
- runtime: Builds and owns everything the server runs on, from Settings: store, models,
  services.
- settings: Settings from the environment (flags override them); one frozen dataclass, read once
  at start.
- static: The pages server.py serves over HTTP: the operator console and the chat widget demo.
- training: `assistant train KIND ...`: the training commands, each living beside its models.

Other rooms import from these modules by name; nothing is re-exported here.
"""

__all__: list[str] = []
