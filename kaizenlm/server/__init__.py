"""The long-lived processes, assembled from the packages' routers: the gateway, the controller,
and `kaizen up`, which supervises broker, controller and gateway on one machine."""
