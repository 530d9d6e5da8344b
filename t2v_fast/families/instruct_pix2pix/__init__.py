"""Video editing: an Instruct-Pix2Pix checkpoint edits an input video by an instruction, with cross-frame attention."""
