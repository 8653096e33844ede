"""The `wsiseg` command: entry point, LightningCLI subclass, config errors, experiment paths,
report, loggers, checkpoint loading, resume, and the tool subcommands under `commands/`."""
