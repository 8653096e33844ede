"""The `wsiseg` command: entry point, LightningCLI subclass, config errors, report, loggers,
checkpoint loading, resume, and the tool subcommands under `commands/`."""
