"""The training setup of the LCRON authors' published runs (kwai/LCRON), on RecFlow and the simulator."""
