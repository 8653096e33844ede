"""The synthetic benchmark generator (`wsiseg synth`): layout, textures, files, TIGER layout."""
