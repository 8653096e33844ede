"""Networks as plain ``nn.Module``s; the LightningModules wrap them with losses and metrics."""
