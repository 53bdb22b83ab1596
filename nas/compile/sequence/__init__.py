"""The whole-sequence autograd function: the layout of a sequence run, its forward and backward programs and the fast forms of the ops."""
