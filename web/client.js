// The browser client: see README.
