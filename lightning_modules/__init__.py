"""Methods on a shared task: `base` (the task), `losses`, `metrics`, one module per paper;
`nets` (plain nn.Modules), `callbacks`, `outputs` (files a run writes), `cli` (`wsiseg`)."""
