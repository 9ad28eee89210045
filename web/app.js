// The demo app.
