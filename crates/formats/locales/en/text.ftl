text-title = Message
text-body = Text
text-body-help = Free text in the sender's language.
