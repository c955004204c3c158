"""The applications on top of the library: the ``fastflow`` command (:mod:`.cli`) and its demo (:mod:`.demo`)."""
