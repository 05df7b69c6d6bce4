"""Guards: one concern each. :func:`keygate.chain.build_chain` puts them in order."""
