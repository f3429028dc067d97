class Thing:
    def __init__(self, params, lr=0.1):
        pass
