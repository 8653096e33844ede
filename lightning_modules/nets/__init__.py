"""Networks as plain ``nn.Module``s; the LightningModules wrap them with losses and metrics."""

from .dmmn import ARCHS, DMMNM2S, DMMNM3, DMMNMS, DSMNS2, VIEWS, DMMNNet, build_dmmn

__all__ = ["ARCHS", "VIEWS", "DMMNM2S", "DMMNM3", "DMMNMS", "DMMNNet", "DSMNS2", "build_dmmn"]
