"""Operations tooling: the native stack (`make stack`), template rendering and the offline lint (`make lint`)."""
