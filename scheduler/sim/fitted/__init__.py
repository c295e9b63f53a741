"""Step-time profiles fitted from live vLLM runs (JSON; ``scheduler.sim.calibrate``).

A package only so that the JSON files ship with an install (package data).
"""
