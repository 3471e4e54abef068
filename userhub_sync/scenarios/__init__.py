"""Runs of the whole pipeline on this machine, each short on one kit: rig (the local stage), traffic (sign-ins),
accounting (what was delivered, dead-lettered or lost), workers (worker processes and the killer), moto_patches."""
