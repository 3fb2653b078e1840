# speed
