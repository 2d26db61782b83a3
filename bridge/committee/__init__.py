"""The committee: typed messages a quorum of attesters signs, the bridge contract that acts only on
a quorum, and (to come) the attester replicas and the deliverer.  ``../shared/DESIGN.md``,
"Attested messages and the committee"."""
