"""The paper's experiments as code: model, data and the closed forms that check them."""
