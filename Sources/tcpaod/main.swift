print("tcpaod")
