"""userhub-sync's tooling, not shipped to Lambda: cli/ for operators, ops/ the AWS library behind it, local/ AWS
and UserHub on this machine, scenarios/ the demo and reliability runs built on them."""
