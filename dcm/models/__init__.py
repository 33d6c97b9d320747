"""Teacher families (toy, wan, hunyuan, cogvideox) behind one adapter API, and the toy's components."""
