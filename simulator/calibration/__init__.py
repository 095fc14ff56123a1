"""Calibration: cost-model parameters fitted to measured runs, with confidence intervals.

`runs` reads measured runs and splits them; `parameters` names what can be fitted;
`fit` fits by bounded least squares on log step times; `fitted` writes and reads the result
as a profile folder (`profiles/fitted/NAME/profile.yaml`).
"""
