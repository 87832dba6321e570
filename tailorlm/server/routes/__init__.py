"""One router per resource; each is a thin shell over serving/."""
