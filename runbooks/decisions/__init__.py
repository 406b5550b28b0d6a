"""Pure decisions: policies, plans, scoring, report rendering. No I/O: a flow gathers, these decide,
so they are tested on any synthetic input."""
