"""FineCaption model: towers, fusion, decoder, decode loop."""
