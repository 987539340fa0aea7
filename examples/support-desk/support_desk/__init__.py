"""support-desk: an example fleet that answers customer requests.

``intake`` classifies a request, ``research`` investigates it with a ReAct agent and
two tools (a help-centre search and an order lookup), ``review`` has three reviewers
vote on the draft, and the approved reply is delivered once through an effect. The
agents live in :mod:`support_desk.agents`; :mod:`support_desk.workload` makes requests.
"""
