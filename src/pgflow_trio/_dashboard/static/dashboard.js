// Live updates for the dashboard (written with the live module). No inline scripts anywhere: CSP forbids them.
