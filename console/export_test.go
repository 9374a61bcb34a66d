package console

// DisplayAmount is displayAmount, for the external tests.
var DisplayAmount = displayAmount
var NiceAxis = niceAxis
