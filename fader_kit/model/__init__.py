"""The method: its settings (``config``), the EAR U-Net, the FADeR head and its training, scoring,
fusion, metrics and the stages that chain them (``pipeline``).  Imports util, maskers and data only."""
