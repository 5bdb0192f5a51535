"""The graph layer: torch.fx tracing and BN folding (trace), the IR (ir), the planner mirroring
prepare_fx (planner), the integer program (program) and module swap (modules)."""
